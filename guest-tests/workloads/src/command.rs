//! Commands the host sends, one per line on the guest's serial input (stdin
//! for the Linux program). `Display` gives the exact line to send.

use core::fmt;

use crate::page::Corruption;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    /// Check every page now; answer with a `verify` event; carry on.
    Verify,
    /// Stop the workload, verify, answer `done`; then only commands remain.
    Stop,
    /// Damage page `page` without telling the generation table (the page is
    /// then left alone by the dirtier), to prove the verifier can fail.
    Corrupt { page: u64, how: Corruption },
    /// Reset the VM (i8042 reset, then a triple fault); the Linux program exits.
    Reboot,
    /// Take a page fault on CPU 0, to exercise the exception path: the test
    /// guest reports it as an `exception` error and CPU 0 stops (the Linux
    /// program only answers with an error).
    Fault,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CommandError<'a> {
    Unknown(&'a str),
    BadArgument(&'a str),
    MissingArgument(&'static str),
}

impl fmt::Display for CommandError<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CommandError::Unknown(w) => write!(f, "unknown command {w:?} (verify, stop, corrupt page=N [how=torn|zero|stale|misplaced], reboot, fault)"),
            CommandError::BadArgument(a) => write!(f, "bad argument {a:?}"),
            CommandError::MissingArgument(a) => write!(f, "missing argument {a}="),
        }
    }
}

impl Command {
    pub fn parse(line: &str) -> Result<Command, CommandError<'_>> {
        let mut words = line.split_ascii_whitespace();
        let name = words.next().unwrap_or("");
        let command = match name {
            "verify" => Command::Verify,
            "stop" => Command::Stop,
            "reboot" => Command::Reboot,
            "fault" => Command::Fault,
            "corrupt" => {
                let (mut page, mut how) = (None, Corruption::Torn);
                for arg in words.by_ref() {
                    match arg.split_once('=') {
                        Some(("page", n)) => {
                            page = Some(n.parse().map_err(|_| CommandError::BadArgument(arg))?)
                        }
                        Some(("how", h)) => {
                            how = Corruption::from_name(h).ok_or(CommandError::BadArgument(arg))?
                        }
                        _ => return Err(CommandError::BadArgument(arg)),
                    }
                }
                Command::Corrupt {
                    page: page.ok_or(CommandError::MissingArgument("page"))?,
                    how,
                }
            }
            _ => return Err(CommandError::Unknown(name)),
        };
        match words.next() {
            Some(extra) => Err(CommandError::BadArgument(extra)),
            None => Ok(command),
        }
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Command::Verify => f.write_str("verify"),
            Command::Stop => f.write_str("stop"),
            Command::Reboot => f.write_str("reboot"),
            Command::Fault => f.write_str("fault"),
            Command::Corrupt { page, how } => write!(f, "corrupt page={page} how={how}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_display_writes() {
        for c in [
            Command::Verify,
            Command::Stop,
            Command::Reboot,
            Command::Fault,
            Command::Corrupt {
                page: 12,
                how: Corruption::Torn,
            },
            Command::Corrupt {
                page: 0,
                how: Corruption::Misplaced,
            },
        ] {
            let mut s = crate::line::LineBuf::<64>::new();
            core::fmt::Write::write_fmt(&mut s, format_args!("{c}")).unwrap();
            assert_eq!(Command::parse(s.as_str()), Ok(c));
        }
        assert_eq!(
            Command::parse("corrupt page=5"),
            Ok(Command::Corrupt {
                page: 5,
                how: Corruption::Torn
            })
        );
    }

    #[test]
    fn rejects_what_it_does_not_know() {
        assert_eq!(Command::parse("fly"), Err(CommandError::Unknown("fly")));
        assert_eq!(
            Command::parse("corrupt"),
            Err(CommandError::MissingArgument("page"))
        );
        assert_eq!(
            Command::parse("corrupt page=x"),
            Err(CommandError::BadArgument("page=x"))
        );
        assert_eq!(
            Command::parse("corrupt page=1 how=melt"),
            Err(CommandError::BadArgument("how=melt"))
        );
        assert_eq!(
            Command::parse("verify now"),
            Err(CommandError::BadArgument("now"))
        );
    }
}
