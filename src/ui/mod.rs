//! The terminal dashboard: state (pure), keymap (one table for keys and help), views (drawing
//! only), themes, the terminal guard, and the loop that ties them to an engine or run
//! directories.

pub mod app;
pub mod keymap;
pub mod math;
pub mod state;
pub mod terminal;
pub mod theme;
pub mod view;
