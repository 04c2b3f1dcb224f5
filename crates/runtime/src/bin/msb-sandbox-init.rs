//! A standalone sandbox init for programs that embed the runtime without
//! the `msb` binary (and for the runtime's own tests): pass its path as the
//! backend's [`msb_runtime::InitProgram`].

fn main() {
    if !msb_runtime::init::is_init() {
        eprintln!("error: msb-sandbox-init is started by the msb runtime inside a new sandbox");
        std::process::exit(2);
    }
    std::process::exit(msb_runtime::init::main());
}
