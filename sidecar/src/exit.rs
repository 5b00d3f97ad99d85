//! The exit codes of the `sidemount` commands: sysexits(3) where one fits, 1
//! for a run that ended but not cleanly.

/// The command ran and did not end cleanly (a shutdown cut short, a probe
/// that failed).
pub const FAILURE: u8 = 1;
/// Invalid specs or input (EX_USAGE).
pub const INVALID: u8 = 64;
/// An input file that cannot be read (EX_NOINPUT).
pub const NO_INPUT: u8 = 66;
/// Output that cannot be written (EX_IOERR).
pub const IO: u8 = 74;
/// An environment that cannot work: settings, files, addresses (EX_CONFIG).
pub const ENVIRONMENT: u8 = 78;
