//! The `msb` command line.

mod cli;

fn main() -> std::process::ExitCode {
    msb::vm_relay_hook();
    cli::main()
}
