//! The DRPO library (pure: no I/O).
