//! What workers decode from the stream: any bytes are refused or decode to
//! a command that survives a second trip through the queue unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tally_domain::ballot::VoteCommand;

fuzz_target!(|data: &[u8]| {
    if let Ok(command) = VoteCommand::decode(data) {
        assert!(command.election_id > 0 && command.citizen_id > 0);
        let again = VoteCommand::decode(&command.encode()).expect("an encoded command decodes");
        assert_eq!(again.msg_id(), command.msg_id());
        assert_eq!(again.selections, command.selections);
        assert_eq!(again.receipt, command.receipt);
    }
});
