from atomsift.cli import main

raise SystemExit(main())
