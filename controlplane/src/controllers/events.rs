//! Event recording shared by the scheduler and controllers (in progress).
