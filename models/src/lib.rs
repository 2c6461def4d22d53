//! In-process inference for drpo-host (filled by the local-inference work).
