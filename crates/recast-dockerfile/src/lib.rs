//! Dockerfiles: the grammar BuildKit accepts, its variable substitution and `ARG` scoping, a
//! resolved model of stages and typed instructions, `.dockerignore` and the wildcard sources of
//! `COPY`.
//!
//! Pure: no network, no async, no I/O beyond reading the files and directories it is handed.
//! Every problem is a [`Diagnostic`](recast_spec::Diagnostic) located at `Dockerfile:LINE:COL`
//! (columns count characters), rendered like spec errors. Anything recast cannot build
//! (`ONBUILD`, heredocs, `RUN --mount`, `ADD` of a URL, another `--platform`, ...) is such an
//! error, never a silent skip.

mod ignore;
mod lines;
mod model;
mod parse;
mod shell;
mod source;

pub use ignore::{ContextError, Ignore, clean, glob};
pub use model::*;
pub use parse::{Options, parse, parse_with};
pub use shell::{Env, process_word, process_words};
