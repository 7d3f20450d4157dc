//! The `together-node` binary: see `together-node --help`.

fn main() -> std::process::ExitCode {
    together_node::cli::main()
}
