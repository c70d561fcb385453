//! The browser leg (WIP).
