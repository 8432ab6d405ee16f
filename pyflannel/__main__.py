from pyflannel.app import timeline

timeline.step("python")  # the interpreter and site are up; nothing of pyflannel imported yet

from pyflannel.app.cli import main  # noqa: E402

raise SystemExit(main())
