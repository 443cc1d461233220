from vlm_gateway.images.netguard import AddressPolicy

DEFAULT = AddressPolicy.build(False)
PRIVATE_OK = AddressPolicy.build(True)


def test_public_addresses_pass():
    for address in ("93.184.216.34", "8.8.8.8", "2606:2800:220:1::", "64:ff9b::808:808"):
        assert DEFAULT.refusal(address) is None, address


def test_private_ranges_pass_only_with_the_opt_in():
    for address in ("127.0.0.1", "10.0.0.1", "192.168.0.1", "100.64.0.1", "fd00::1", "::1"):
        assert DEFAULT.refusal(address) is not None
        assert PRIVATE_OK.refusal(address) is None, address


def test_the_opt_in_never_admits_metadata_multicast_unspecified_or_mapped():
    for address in (
        "169.254.169.254",
        "fd00:ec2::254",
        "224.0.0.1",
        "0.0.0.0",
        "::",
        "::ffff:127.0.0.1",
        "ff02::1",
    ):
        assert PRIVATE_OK.refusal(address) is not None, address


def test_allowed_networks_admit_exactly_their_range():
    policy = AddressPolicy.build(False, ["10.1.0.0/16"])
    assert policy.refusal("10.1.2.3") is None
    assert "private" in policy.refusal("10.2.0.1")


def test_scoped_or_garbage_addresses_are_refused():
    assert DEFAULT.refusal("fe80::1%eth0") is not None
    assert DEFAULT.refusal("not-an-ip") is not None
