//! Issue 29: the operations area of the public API, through the real server.
