//! A run's output and phases as the host sees them, checked as they come:
//! the guest is hostile until proven otherwise.

use ignis_protocol::{Phase, RunOutcome, Stream};

use super::{Execution, RunError};

/// Output and phases of one run as the host saw them, checked as they come.
pub(super) struct Collected {
    cap: usize,
    phase: Option<Phase>,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

impl Collected {
    pub(super) fn new(cap: usize) -> Self {
        Collected {
            cap,
            phase: None,
            stdout: Vec::new(),
            stderr: Vec::new(),
        }
    }

    pub(super) fn phase(&mut self, p: Phase) -> Result<(), RunError> {
        let ok = matches!(
            (self.phase, p),
            (None, Phase::Compiling)
                | (None, Phase::Running)
                | (Some(Phase::Compiling), Phase::Running)
        );
        if !ok {
            return Err(RunError::Protocol(format!(
                "phase {p:?} after {:?}",
                self.phase
            )));
        }
        self.phase = Some(p);
        Ok(())
    }

    pub(super) fn output(&mut self, stream: Stream, data: &[u8]) -> Result<(), RunError> {
        if self.phase != Some(Phase::Running) {
            return Err(RunError::Protocol("output before the program ran".into()));
        }
        let buf = match stream {
            Stream::Stdout => &mut self.stdout,
            Stream::Stderr => &mut self.stderr,
        };
        if buf.len() + data.len() > self.cap {
            return Err(RunError::Protocol(format!(
                "{stream:?} exceeds the {} byte cap the agent was given",
                self.cap
            )));
        }
        buf.extend_from_slice(data);
        Ok(())
    }

    pub(super) fn finish(self, outcome: RunOutcome) -> Result<Execution, RunError> {
        if outcome
            .compile_output
            .as_ref()
            .is_some_and(|c| c.len() > 1024 * 1024)
        {
            return Err(RunError::Protocol("compile output too large".into()));
        }
        if outcome
            .message
            .as_ref()
            .is_some_and(|m| m.len() > 64 * 1024)
        {
            return Err(RunError::Protocol("message too large".into()));
        }
        Ok(Execution {
            outcome,
            stdout: self.stdout,
            stderr: self.stderr,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_past_the_cap_is_a_protocol_violation() {
        let mut c = Collected::new(4);
        c.phase(Phase::Running).expect("phase");
        c.output(Stream::Stdout, b"abcd").expect("within cap");
        assert!(matches!(
            c.output(Stream::Stdout, b"e"),
            Err(RunError::Protocol(_))
        ));
        c.output(Stream::Stderr, b"ab")
            .expect("stderr has its own cap");
    }

    #[test]
    fn phases_only_move_forward() {
        let mut c = Collected::new(1);
        assert!(c.output(Stream::Stdout, b"x").is_err());
        c.phase(Phase::Compiling).expect("compile");
        c.phase(Phase::Running).expect("run");
        assert!(c.phase(Phase::Compiling).is_err());
    }
}
