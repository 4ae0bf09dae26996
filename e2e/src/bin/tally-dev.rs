//! `tally-dev`: the local stack of `make dev` (see `tally_e2e::dev`).

fn main() -> std::process::ExitCode {
    tally_e2e::dev::main()
}
