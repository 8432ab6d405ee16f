from pyflannel.app.cli import main

raise SystemExit(main())
