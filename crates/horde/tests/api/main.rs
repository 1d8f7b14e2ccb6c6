//! Integration tests: the real coordinator on a loopback port with a temporary SQLite file (or
//! a new PostgreSQL database when `HORDE_TEST_POSTGRES_URL` is set: `backend`),
//! driven over HTTP through the project's typed client (`horde-client`), as users and workers
//! would drive it. One test binary, so the crates are linked once.

mod accounts;
mod alchemist;
mod attacks;
mod authz;
mod backend;
mod batches;
mod bench;
mod browser;
mod chaos;
mod cli;
mod client_areas;
mod client_compat;
mod cluster;
mod crash;
mod dashboard;
mod deadlines;
mod durability;
mod economy;
mod errors;
mod eta;
mod filters;
mod fuzz_corpus;
mod helpers;
mod img2img;
mod interrogate;
mod invites;
mod key_management;
mod lifecycle;
mod limits;
mod loras;
mod matching;
mod metrics;
mod model_routing;
mod models;
mod modes;
mod operations;
mod register;
mod reputation;
mod sdk_compat;
mod sources;
mod styles;
mod surface;
mod teams;
mod text;
mod text_worker;
mod tiers;
mod uploads;
mod waiting;
mod webhooks;
mod worker;
mod worker_models;
mod worker_networks;
