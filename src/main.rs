pub mod pb {
    tonic::include_proto!("callgate.v1");
}
fn main() {}
