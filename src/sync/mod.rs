//! The reconcile pipeline, shared by both kinds:
//! resolve (IO) -> fetch (IO) -> render (pure) -> apply (IO) -> status (IO).

pub mod render;
pub mod schedule;
