package microsandbox

import (
	"context"
	"errors"
)

// SandboxConfig is what the SandboxOption functions fill in.
type SandboxConfig struct {
	// Mounts maps guest paths to mounts.
	Mounts map[string]MountConfig
	// Rootfs is a host directory used as the root filesystem (through a
	// private writable layer); empty is a fresh root with the host's
	// programs.
	Rootfs string
	// Env is set for every command.
	Env map[string]string
	// Workdir is the working directory of commands.
	Workdir string
	// MemoryMiB limits the sandbox's memory (zero: 1024).
	MemoryMiB uint32
	// CPUs limits the sandbox's CPU time (zero: no limit).
	CPUs uint8
	// Backend is the isolation (empty: BackendNamespace).
	Backend Backend
}

// Backend is how a sandbox is isolated.
type Backend string

const (
	// BackendNamespace runs the sandbox in Linux namespaces on the host's
	// kernel.
	BackendNamespace Backend = "namespace"
	// BackendVM runs the sandbox in a microVM with a kernel of its own.
	BackendVM Backend = "vm"
	// BackendAuto takes the microVM where KVM works on this host, else
	// the namespace backend.
	BackendAuto Backend = "auto"
)

// SandboxOption configures CreateSandbox.
type SandboxOption func(*SandboxConfig)

// WithMounts adds mounts by guest path; later calls add to earlier ones.
func WithMounts(mounts map[string]MountConfig) SandboxOption {
	return func(c *SandboxConfig) {
		if c.Mounts == nil {
			c.Mounts = make(map[string]MountConfig, len(mounts))
		}
		for k, v := range mounts {
			c.Mounts[k] = v
		}
	}
}

// WithBindRootfs uses a host directory as the root filesystem.
func WithBindRootfs(path string) SandboxOption {
	return func(c *SandboxConfig) { c.Rootfs = path }
}

// WithEnv adds environment variables for every command.
func WithEnv(env map[string]string) SandboxOption {
	return func(c *SandboxConfig) {
		if c.Env == nil {
			c.Env = make(map[string]string, len(env))
		}
		for k, v := range env {
			c.Env[k] = v
		}
	}
}

// WithWorkdir sets the working directory of commands.
func WithWorkdir(path string) SandboxOption {
	return func(c *SandboxConfig) { c.Workdir = path }
}

// WithMemory limits the sandbox's memory in MiB.
func WithMemory(mebibytes uint32) SandboxOption {
	return func(c *SandboxConfig) { c.MemoryMiB = mebibytes }
}

// WithCPUs limits the sandbox's CPU time to this many CPUs.
func WithCPUs(cpus uint8) SandboxOption {
	return func(c *SandboxConfig) { c.CPUs = cpus }
}

// WithBackend chooses the isolation: BackendNamespace (the default),
// BackendVM or BackendAuto.
func WithBackend(backend Backend) SandboxOption {
	return func(c *SandboxConfig) { c.Backend = backend }
}

// Sandbox is a named sandbox. Running one needs root for served mounts
// and the msb binary as its helper ($MSB_BIN, next to the program, or on
// PATH).
type Sandbox struct {
	name string
}

type sandboxWire struct {
	Name  string `json:"name"`
	State string `json:"state"`
}

// Name is the sandbox's name.
func (s *Sandbox) Name() string { return s.name }

// CreateSandbox records a sandbox with its mounts (provisioning named
// volumes as their modes say) and starts it. If it cannot start it is
// removed again, with the volumes created for it.
func CreateSandbox(ctx context.Context, name string, opts ...SandboxOption) (*Sandbox, error) {
	if err := checkContext(ctx); err != nil {
		return nil, err
	}
	var c SandboxConfig
	for _, o := range opts {
		o(&c)
	}
	mounts := make(map[string]mountWire, len(c.Mounts))
	for guest, m := range c.Mounts {
		mounts[guest] = m.wire()
	}
	in := struct {
		Name      string               `json:"name"`
		Mounts    map[string]mountWire `json:"mounts,omitempty"`
		Rootfs    string               `json:"rootfs,omitempty"`
		Env       map[string]string    `json:"env,omitempty"`
		Workdir   string               `json:"workdir,omitempty"`
		MemoryMiB uint32               `json:"memory_mib,omitempty"`
		CPUs      uint8                `json:"cpus,omitempty"`
		Backend   Backend              `json:"backend,omitempty"`
	}{name, mounts, c.Rootfs, c.Env, c.Workdir, c.MemoryMiB, c.CPUs, c.Backend}
	var out sandboxWire
	if err := call("sandbox.create", in, &out); err != nil {
		return nil, err
	}
	return &Sandbox{name: out.Name}, nil
}

// StartSandbox starts a stopped sandbox with its recorded config.
func StartSandbox(ctx context.Context, name string) (*Sandbox, error) {
	return sandboxCall(ctx, "sandbox.start", name)
}

// GetSandbox looks a sandbox up (ErrSandboxNotFound if there is none).
func GetSandbox(ctx context.Context, name string) (*Sandbox, error) {
	return sandboxCall(ctx, "sandbox.get", name)
}

func sandboxCall(ctx context.Context, op, name string) (*Sandbox, error) {
	if err := checkContext(ctx); err != nil {
		return nil, err
	}
	var out sandboxWire
	if err := call(op, nameArg{name}, &out); err != nil {
		return nil, err
	}
	return &Sandbox{name: out.Name}, nil
}

// ListSandboxes returns the names of all sandboxes, newest first.
func ListSandboxes(ctx context.Context) ([]string, error) {
	if err := checkContext(ctx); err != nil {
		return nil, err
	}
	var out []sandboxWire
	if err := call("sandbox.list", struct{}{}, &out); err != nil {
		return nil, err
	}
	names := make([]string, len(out))
	for i, s := range out {
		names[i] = s.Name
	}
	return names, nil
}

// RemoveSandbox removes a stopped sandbox, releasing its volumes (which
// stay, with their data). A running one is refused (ErrSandboxStillRunning).
func RemoveSandbox(ctx context.Context, name string) error {
	if err := checkContext(ctx); err != nil {
		return err
	}
	return call("sandbox.remove", nameArg{name}, nil)
}

// Stop stops the sandbox if it runs and waits until it is down; commands
// still running get SIGTERM and five seconds before they are killed.
func (s *Sandbox) Stop(ctx context.Context) error {
	if err := checkContext(ctx); err != nil {
		return err
	}
	return call("sandbox.stop", nameArg{s.name}, nil)
}

// ExecOutput is what a command produced.
type ExecOutput struct {
	stdout, stderr []byte
	exitCode       int
}

// Stdout is the standard output as a string.
func (o *ExecOutput) Stdout() string { return string(o.stdout) }

// Stderr is the standard error as a string.
func (o *ExecOutput) Stderr() string { return string(o.stderr) }

// StdoutBytes is the standard output.
func (o *ExecOutput) StdoutBytes() []byte { return o.stdout }

// StderrBytes is the standard error.
func (o *ExecOutput) StderrBytes() []byte { return o.stderr }

// ExitCode is the exit status: the code, or 128+N when killed by signal N.
func (o *ExecOutput) ExitCode() int { return o.exitCode }

// Success reports a zero exit status.
func (o *ExecOutput) Success() bool { return o.exitCode == 0 }

// Exec runs cmd with args in the running sandbox, with no input, and
// collects its output. A command that fails is not an error (see
// ExitCode). When ctx ends first the command is killed and Exec returns an
// ErrCancelled error wrapping ctx's.
func (s *Sandbox) Exec(ctx context.Context, cmd string, args []string) (*ExecOutput, error) {
	if err := checkContext(ctx); err != nil {
		return nil, err
	}
	in := struct {
		Sandbox string   `json:"sandbox"`
		Cmd     string   `json:"cmd"`
		Args    []string `json:"args"`
	}{s.name, cmd, args}
	var started struct {
		ID uint64 `json:"id"`
	}
	if err := call("exec.start", in, &started); err != nil {
		return nil, err
	}
	type result struct {
		out *ExecOutput
		err error
	}
	done := make(chan result, 1)
	go func() {
		out, err := execWait(started.ID)
		done <- result{out, err}
	}()
	select {
	case r := <-done:
		return r.out, r.err
	case <-ctx.Done():
		killErr := call("exec.kill", struct {
			ID uint64 `json:"id"`
		}{started.ID}, nil)
		err := ctx.Err()
		return nil, &Error{Kind: ErrCancelled, Message: err.Error(), Cause: errors.Join(err, killErr)}
	}
}

// Shell runs command with /bin/sh -c.
func (s *Sandbox) Shell(ctx context.Context, command string) (*ExecOutput, error) {
	return s.Exec(ctx, "/bin/sh", []string{"-c", command})
}
