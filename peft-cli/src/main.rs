//! `peft`: parameter-efficient fine-tuning of frozen transformers from the command line.

fn main() {
    std::process::exit(peft_cli::run());
}
