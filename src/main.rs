//! The `stratafs` command (see `stratafs::cli`).

fn main() {
    std::process::exit(stratafs::cli::main());
}
