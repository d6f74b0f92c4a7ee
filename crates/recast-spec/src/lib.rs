//! The `recast.hcl` language: parse a project's spec files into a checked, typed model.
//!
//! This crate does no I/O beyond reading the spec files and checking that the local paths they
//! name exist. Everything it returns is either a fully checked [`Project`] or every problem found,
//! each located by file, line and column.

mod bases;
mod decode;
mod diag;
pub mod eval;
pub mod model;
mod project;
mod redact;
pub mod reference;
pub mod values;
mod vars;

pub use diag::{Diagnostic, Diagnostics, file_diag, suggest};
pub use model::*;
pub use project::{load, load_with};
pub use redact::{redact_in, redact_url};
pub use vars::{Given, Inputs, VarValue};
