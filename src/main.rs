pub mod pb {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("callgate.v1");
}
fn main() {}
