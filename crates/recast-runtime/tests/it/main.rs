//! Runtime tests with real containers.
