//! Route handlers: parse, authorise, call the state's service methods, map the answer.
//! No SQL and no business rule lives here.

pub mod filters;
pub mod generate;
pub mod interrogate;
pub mod invites;
pub mod modes;
pub mod operations;
pub mod reference;
pub mod register;
pub mod shared_keys;
pub mod sources;
pub mod status;
pub mod styles;
pub mod teams;
pub mod text;
pub mod users;
pub mod workers;
