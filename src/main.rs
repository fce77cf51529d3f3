pub mod pb {
    #![allow(clippy::all)]
    tonic::include_proto!("callgate.v1");
}
fn main() {}
