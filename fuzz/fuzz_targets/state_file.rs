//! The state-file loader: any bytes are either a valid state or a clean error.
#![no_main]
use libfuzzer_sys::fuzz_target;
use sms_ingress::model::state::State;

fuzz_target!(|data: &[u8]| {
    if let Ok(state) = serde_json::from_slice::<State>(data) {
        if state.validate().is_ok() {
            let again: State = serde_json::from_slice(&serde_json::to_vec(&state).unwrap()).unwrap();
            assert_eq!(again, state);
        }
    }
});
