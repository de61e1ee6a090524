from sdworker.cli import main

raise SystemExit(main())
