//! Cluster topology replies (`CLUSTER SHARDS`, `CLUSTER SLOTS`) from arbitrary bytes: no
//! panic, and a map read is consistent: every covered slot names a listed shard, and every
//! listed shard serves a slot.
#![no_main]

use libfuzzer_sys::fuzz_target;
use respguard::cluster::slot::SLOTS;
use respguard::cluster::topology::SlotMap;

fuzz_target!(|data: &[u8]| {
    let maps = [
        SlotMap::from_shards_reply(data, false),
        SlotMap::from_shards_reply(data, true),
        SlotMap::from_slots_reply(data, "seed.example"),
    ];
    for map in maps.into_iter().flatten() {
        let mut served = vec![false; map.shards().len()];
        for slot in 0..SLOTS as u16 {
            if let Some(i) = map.shard_index(slot) {
                served[i] = true;
            }
        }
        assert!(served.iter().all(|&s| s), "a listed shard serves no slot");
    }
});
