//! Issue 29: the styles area of the public API, through the real server.
