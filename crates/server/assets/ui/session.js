// Who is signed in, and the rules the client checks before the server does (password policy).

export const session = {
  /** GET /api/v1/auth/status */
  status: null,
  /** The UserDTO of the signed-in user; a synthetic admin in single-user mode. */
  user: null,
  /** Image metadata handed from the gallery's "Use these settings" to the Generate screen. */
  pendingRecall: null,
  get multiuser() {
    return !!this.status?.multiuser_enabled;
  },
  get isAdmin() {
    return !!this.user?.is_admin;
  },
  /** True when `userId` is the signed-in user (everything is "mine" in single-user mode). */
  isMe(userId) {
    return !this.multiuser || userId === this.user?.user_id;
  },
};

export const SINGLE_USER = {
  user_id: 'system',
  email: 'system@system.invokeai',
  display_name: 'System',
  is_admin: true,
  is_active: true,
};

/**
 * The password policy (spec auth.md §9.5, the web client's ASCII variant). Returns
 * { ok, problems: string[], strength: 'weak'|'moderate'|'strong' }. Under the strict policy
 * problems block submission; otherwise only an empty password does, and strength is a warning.
 */
export function checkPassword(pw, strict) {
  const problems = [];
  const long = pw.length >= 8;
  const classes = /[A-Z]/.test(pw) && /[a-z]/.test(pw) && /\d/.test(pw);
  if (strict) {
    if (!long) problems.push('at least 8 characters');
    if (!classes) problems.push('uppercase, lowercase and a number');
  } else if (!pw) {
    problems.push('a password');
  }
  const strength = !long ? 'weak' : classes ? 'strong' : 'moderate';
  return { ok: problems.length === 0, problems, strength };
}

/** Display name, else email. */
export const userLabel = (u) => (u ? u.display_name || u.email : '');
