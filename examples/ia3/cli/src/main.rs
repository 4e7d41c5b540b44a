//! `peft-ia3`: the whole `peft` command with IA3 linked in.

fn main() {
    peft_ia3_example::register();
    std::process::exit(peft_cli::run());
}
