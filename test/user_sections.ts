// The user-task sections as they sit in a run config (spread into `model` and `reward`, plus `prompts`), and the
// loop fields userTaskOptions reads: shared by the tests that parse user configs (not a test file itself).
import { z } from "zod";

import { PromptsSchema, userModelFields, userRewardFields } from "../src/data/user_config.js";

export const UserSections = z.strictObject({
  model: z.strictObject({ policy: z.string().optional(), reference: z.string().optional(), ...userModelFields }),
  prompts: PromptsSchema.optional(),
  reward: z.strictObject(userRewardFields),
});

export const LOOP_PARTS = { loop: { prompts: 8 }, eval: { prompts: 3 }, sampling: { maxNewTokens: 8 } };
