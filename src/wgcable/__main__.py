from wgcable.cli.main import main

raise SystemExit(main())
