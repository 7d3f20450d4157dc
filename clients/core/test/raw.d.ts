/** Vite's `?raw` imports: a file's text (used to read the spec's test vectors). */
declare module "*?raw" {
  const text: string;
  export default text;
}
