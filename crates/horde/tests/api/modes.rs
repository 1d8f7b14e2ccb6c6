//! Issue 29: the modes area of the public API, through the real server.
