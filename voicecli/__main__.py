from voicecli.cli import main

if __name__ == "__main__":  # spawned STT workers re-import this module
    main()
