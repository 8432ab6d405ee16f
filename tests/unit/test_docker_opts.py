"""pyflannel docker-opts: upstream's mk-docker-opts.sh output (dist/mk_docker_opts_test.go)."""

import pytest

from pyflannel.ops.docker_opts import DockerOptsError, docker_options

ENV = {
    "FLANNEL_NETWORK": "10.1.0.0/16",
    "FLANNEL_SUBNET": "10.1.74.1/24",
    "FLANNEL_MTU": "1472",
    "FLANNEL_IPMASQ": "false",
}


def test_upstream_vector():
    assert docker_options(ENV) == (
        'DOCKER_OPT_BIP="--bip=10.1.74.1/24"\n'
        'DOCKER_OPT_IPMASQ="--ip-masq=true"\n'
        'DOCKER_OPT_MTU="--mtu=1472"\n'
        'DOCKER_OPTS=" --bip=10.1.74.1/24 --ip-masq=true --mtu=1472"\n'
    )


def test_docker_does_not_masquerade_when_flannel_does():
    assert "--ip-masq=false" in docker_options({**ENV, "FLANNEL_IPMASQ": "true"})


def test_combined_only_with_a_key_and_an_existing_value():
    assert docker_options(ENV, individual=False, combined=True, key="OPTS", existing="--debug") == (
        'OPTS="--debug  --bip=10.1.74.1/24 --ip-masq=true --mtu=1472"\n'
    )


def test_individual_only_without_ipmasq():
    assert docker_options(ENV, individual=True, combined=False, omit_ipmasq=True) == (
        'DOCKER_OPT_BIP="--bip=10.1.74.1/24"\nDOCKER_OPT_MTU="--mtu=1472"\n'
    )


@pytest.mark.parametrize(
    "env, message",
    [
        ({**ENV, "FLANNEL_IPMASQ": "yes"}, "FLANNEL_IPMASQ must be"),
        ({"FLANNEL_MTU": "1472"}, "FLANNEL_SUBNET is missing"),
    ],
)
def test_bad_subnet_files_are_errors(env, message):
    with pytest.raises(DockerOptsError, match=message):
        docker_options(env)
