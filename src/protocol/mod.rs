//! Wire formats of both lanes: decode client frames into typed values and encode
//! gateway frames. No I/O and no policy: input comes from `transport::session`,
//! output goes to `lanes`.

pub mod ext;
pub mod hot;
