/**
 * For the scripts and benches: runs `main()` and sets the process's exit status from its result
 * (an error is printed and gives status 1).
 */
export function runMain(main: () => Promise<number>): void {
  main().then(
    (code) => {
      process.exitCode = code;
    },
    (e: unknown) => {
      console.error(e);
      process.exitCode = 1;
    },
  );
}
