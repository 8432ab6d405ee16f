from pyflannel.cli import main

raise SystemExit(main())
