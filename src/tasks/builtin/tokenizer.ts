// Character-level tokenizer for the built-in task.
//
// The vocabulary is fixed (not learned) so that checkpoints, the reward model
// and the policy always agree on ids. Layout:
//   0 <pad>, 1 <bos>, 2 <eos>, then '0'-'9', 'a'-'z', ' ', and the punctuation
//   the prompt families use. '=' ends every prompt: the model sees
//   <bos> prompt '=' and then generates the response followed by <eos>.

export const PAD_ID = 0;
export const BOS_ID = 1;
export const EOS_ID = 2;

const SPECIALS = ["<pad>", "<bos>", "<eos>"] as const;
const DIGITS = "0123456789";
const LETTERS = "abcdefghijklmnopqrstuvwxyz";
const PUNCTUATION = " :+-,.=?";

/** Marks the end of the prompt; the response starts right after it. */
export const PROMPT_END = "=";

/** Every token's text, indexed by id. */
export const VOCAB: readonly string[] = [...SPECIALS, ...DIGITS, ...LETTERS, ...PUNCTUATION];
export const VOCAB_SIZE = VOCAB.length;

const CHAR_TO_ID: ReadonlyMap<string, number> = new Map(
  VOCAB.map((token, id) => [token, id] as const).filter(([, id]) => id >= SPECIALS.length),
);

/**
 * Shown in decoded responses where the model emitted <pad> or <bos>. It is
 * deliberately outside the vocabulary, so it can never match a gold answer
 * and the gold reward counts it as junk.
 */
export const STRAY_SPECIAL = "#";

export class TokenizerError extends Error {
  constructor(
    readonly char: string,
    readonly position: number,
  ) {
    super(`character ${JSON.stringify(char)} at position ${position} is not in the vocabulary`);
    this.name = "TokenizerError";
  }
}

export interface EncodeOptions {
  bos?: boolean;
  eos?: boolean;
}

/** Text to ids, one id per character; throws TokenizerError on unknown characters. */
export function encode(text: string, options: EncodeOptions = {}): Int32Array {
  const ids: number[] = [];
  if (options.bos === true) ids.push(BOS_ID);
  // Iterate by code point so the error names a whole character, not half a surrogate pair.
  let position = 0;
  for (const char of text) {
    const id = CHAR_TO_ID.get(char);
    if (id === undefined) throw new TokenizerError(char, position);
    ids.push(id);
    position += 1;
  }
  if (options.eos === true) ids.push(EOS_ID);
  return Int32Array.from(ids);
}

/** The model's input for a prompt: <bos> text '='. */
export function encodePrompt(text: string): Int32Array {
  return encode(text + PROMPT_END, { bos: true });
}

function checkId(id: number): void {
  if (!Number.isInteger(id) || id < 0 || id >= VOCAB_SIZE) {
    throw new RangeError(`token id ${id} is outside the vocabulary [0, ${VOCAB_SIZE})`);
  }
}

/** Ids to text; special tokens are written out as "<pad>", "<bos>", "<eos>". */
export function decode(ids: ArrayLike<number>): string {
  let text = "";
  for (let i = 0; i < ids.length; i++) {
    const id = ids[i] as number;
    checkId(id);
    text += VOCAB[id] as string;
  }
  return text;
}

export interface DecodedResponse {
  /** Characters before the first <eos>; stray <pad>/<bos> become STRAY_SPECIAL. */
  text: string;
  endedWithEos: boolean;
}

/** Decodes generated response ids the way the reward sees them. */
export function decodeResponse(ids: ArrayLike<number>): DecodedResponse {
  let text = "";
  for (let i = 0; i < ids.length; i++) {
    const id = ids[i] as number;
    checkId(id);
    if (id === EOS_ID) return { text, endedWithEos: true };
    text += id < SPECIALS.length ? STRAY_SPECIAL : (VOCAB[id] as string);
  }
  return { text, endedWithEos: false };
}
