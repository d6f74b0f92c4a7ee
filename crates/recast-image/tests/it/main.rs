//! Integration tests of the image store and builder.
