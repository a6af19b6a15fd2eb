//! One module per `skiff` subcommand (besides `server`, which lives in main.rs):
//! its clap arguments and its `run`.

pub mod agent;
pub mod dns;
pub mod down;
pub mod image;
pub mod proxy;
pub mod up;
