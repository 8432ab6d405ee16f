"""``pyflannel trace SRC DST``: the path between two overlay addresses as this node sees it,
checked place by place (store, route, neighbour, FDB, rules, underlay, encapsulation, the
destination node), with the first place it fails."""
