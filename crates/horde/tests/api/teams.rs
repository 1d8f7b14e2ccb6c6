//! Issue 29: the teams area of the public API, through the real server.
