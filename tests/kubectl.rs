//! kubectl scenarios against `skiff server`.
mod common;
