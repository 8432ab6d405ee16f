"""The test bed's sweep recognises every name the project gives namespaces, and no other."""

import pytest

from testbed.netns import NAME_RE


@pytest.mark.parametrize(
    "name, pid",
    [
        ("pf15568x0-h2", 15568),  # a TestBed's host (pf<pid>x<bed>-)
        ("pf15568x12-lan", 15568),
        ("pf15568x0-h1p", 15568),  # a pod behind it
        ("pf4242-cnihost", 4242),  # the CNI tests' own
        ("pf4242d-lan", 4242),  # a tagged name (pf<pid><letter>-)
    ],
)
def test_names_of_ours_give_their_process(name, pid):
    m = NAME_RE.match(name)
    assert m is not None and int(m.group(1)) == pid


@pytest.mark.parametrize("name", ["pfx1-h1", "cni-1234", "pf12ab-h1", "my-pf123-ns", "pf123"])
def test_other_names_are_never_swept(name):
    assert NAME_RE.match(name) is None
