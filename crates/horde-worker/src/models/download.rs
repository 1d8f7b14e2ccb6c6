//! Downloads the files of models the reference lists (being written: issue 30).
