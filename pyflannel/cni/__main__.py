"""``python -m pyflannel.cni``: the plugin, as the installed ``flannel`` executable runs it."""

from pyflannel.cni.plugin import main

raise SystemExit(main())
