//! Integer and float arithmetic (InvokeAI's `math.py`), plus `if` from `logic.py`, which the
//! reference also files under `math`.
//!
//! Python integers have no bound; ours are 64-bit, so a result that does not fit fails with
//! `OverflowError` instead of growing. The random nodes draw from `rand`, not numpy, so their
//! values differ from the reference's for the same state (neither exposes a seed).

use super::primitives::{tagged, value_field};
use super::{node, value_output};
use crate::field::Ty;
use crate::spec::{Input, Inputs, NodeSpec};
use crate::NodeError;
use rand::Rng;
use serde_json::{json, Map, Value};

fn ab(default: Value, ty: Ty) -> Vec<Input> {
    vec![
        Input::new("a", ty.clone())
            .default(default.clone())
            .desc("The first number"),
        Input::new("b", ty)
            .default(default)
            .desc("The second number"),
    ]
}

fn overflow() -> NodeError {
    NodeError::new("OverflowError", "integer result does not fit in 64 bits")
}

fn int_output(value: Option<i64>) -> Result<Map<String, Value>, NodeError> {
    value.map(|v| value_output(json!(v))).ok_or_else(overflow)
}

/// Python's `a / b` for integers: the exact quotient, correctly rounded to a double.
pub(super) fn py_truediv(a: i64, b: i64) -> f64 {
    const EXACT: u64 = 1 << 53;
    if a.unsigned_abs() <= EXACT && b.unsigned_abs() <= EXACT {
        // Both operands are exact doubles, so IEEE division rounds the exact quotient once.
        return a as f64 / b as f64;
    }
    let (n, d) = (u128::from(a.unsigned_abs()), u128::from(b.unsigned_abs()));
    // Scale the numerator to 128 bits so the quotient keeps at least 64 significant bits,
    // and fold the remainder into a sticky bit below the rounding position.
    let shift = n.leading_zeros();
    let scaled = n << shift;
    let quotient = (scaled / d) | u128::from(scaled % d != 0);
    let magnitude = quotient as f64 * 2f64.powi(-(shift as i32));
    if (a < 0) != (b < 0) {
        -magnitude
    } else {
        magnitude
    }
}

/// Python's `int(a / b)`; `b` must not be zero.
fn int_div(a: i64, b: i64) -> Option<i64> {
    float_to_i64(py_truediv(a, b).trunc())
}

/// An integral double as i64, if it fits.
fn float_to_i64(f: f64) -> Option<i64> {
    // 2^63 is exactly representable; i64 covers [-2^63, 2^63).
    (-9_223_372_036_854_775_808.0..9_223_372_036_854_775_808.0)
        .contains(&f)
        .then_some(f as i64)
}

/// Python's `a % b` (the result takes the divisor's sign); `b` must not be zero.
fn py_mod(a: i64, b: i64) -> i64 {
    let r = a.wrapping_rem(b);
    if r != 0 && ((r < 0) != (b < 0)) {
        r + b
    } else {
        r
    }
}

/// Python's `a ** b` for integers with `b >= 0`.
fn int_pow(a: i64, b: i64) -> Option<i64> {
    match a {
        0 => Some(i64::from(b == 0)),
        1 => Some(1),
        -1 => Some(if b % 2 == 0 { 1 } else { -1 }),
        _ => u32::try_from(b).ok().and_then(|e| a.checked_pow(e)),
    }
}

/// Python's `round(x, ndigits)` for floats: the exact binary value rounded half-to-even at
/// the decimal position.
pub(super) fn py_round(x: f64, ndigits: i64) -> f64 {
    if !x.is_finite() || x == 0.0 || ndigits > 323 {
        return x;
    }
    if ndigits < -308 {
        return 0.0 * x;
    }
    // Every finite double has an exact decimal expansion of at most 1074 fractional digits.
    let exact = format!("{:.1100}", x.abs());
    let (int_part, frac) = exact.split_once('.').unwrap_or((exact.as_str(), ""));
    let digits: Vec<u8> = int_part.bytes().chain(frac.bytes()).collect();
    let point = int_part.len() as i64;
    let keep = point + ndigits;
    if keep >= digits.len() as i64 {
        return x;
    }
    let sign = if x < 0.0 { "-" } else { "" };
    if keep < 0 {
        return format!("{sign}0").parse().unwrap_or(0.0);
    }
    let keep = keep as usize;
    let (head, tail) = digits.split_at(keep);
    let last_odd = head.last().is_some_and(|d| (d - b'0') % 2 == 1);
    let round_up = match tail.first() {
        Some(d) if *d > b'5' => true,
        Some(b'5') => tail[1..].iter().any(|d| *d != b'0') || last_odd,
        _ => false,
    };
    let mut kept: Vec<u8> = if head.is_empty() {
        vec![b'0']
    } else {
        head.to_vec()
    };
    if round_up {
        let mut i = kept.len();
        loop {
            if i == 0 {
                kept.insert(0, b'1');
                break;
            }
            i -= 1;
            if kept[i] == b'9' {
                kept[i] = b'0';
            } else {
                kept[i] += 1;
                break;
            }
        }
    }
    let mantissa = String::from_utf8_lossy(&kept);
    let exponent = -ndigits;
    format!("{sign}{mantissa}e{exponent}").parse().unwrap_or(x)
}

/// numpy's rounding of a float64 (`np.round`): scale, round half to even, scale back.
fn np_round(x: f64, decimals: i64) -> f64 {
    let d = decimals.clamp(-400, 400) as i32;
    if d >= 0 {
        let f = 10f64.powi(d);
        (x * f).round_ties_even() / f
    } else {
        let f = 10f64.powi(-d);
        (x / f).round_ties_even() * f
    }
}

/// numpy's message when `low >= high` for an open integer interval.
pub(super) fn bounds_error(low: i64) -> NodeError {
    NodeError::value(if low == 0 { "high <= 0" } else { "low >= high" })
}

const INTEGER_OPERATIONS: &[&str] = &[
    "ADD", "SUB", "MUL", "DIV", "EXP", "MOD", "ABS", "MIN", "MAX",
];
const FLOAT_OPERATIONS: &[&str] = &[
    "ADD", "SUB", "MUL", "DIV", "EXP", "ABS", "SQRT", "MIN", "MAX",
];
const ROUNDING_METHODS: &[&str] = &["Nearest", "Floor", "Ceiling", "Truncate"];

fn integer_math(i: &Inputs) -> Result<Map<String, Value>, NodeError> {
    let (op, a, b) = (i.str("operation")?, i.int("a")?, i.int("b")?);
    // The reference checks these in a validator on `b`.
    match op {
        "DIV" | "MOD" if b == 0 => return Err(NodeError::value("Cannot divide by zero")),
        "EXP" if b < 0 => {
            return Err(NodeError::value(
                "Result of exponentiation is not an integer",
            ))
        }
        _ => {}
    }
    int_output(match op {
        "ADD" => a.checked_add(b),
        "SUB" => a.checked_sub(b),
        "MUL" => a.checked_mul(b),
        "DIV" => int_div(a, b),
        "EXP" => int_pow(a, b),
        "MOD" => Some(py_mod(a, b)),
        "ABS" => a.checked_abs(),
        "MIN" => Some(a.min(b)),
        _ => Some(a.max(b)),
    })
}

fn float_math(i: &Inputs) -> Result<Map<String, Value>, NodeError> {
    let (op, a, b) = (i.str("operation")?, i.float("a")?, i.float("b")?);
    let value = match op {
        "ADD" => a + b,
        "SUB" => a - b,
        "MUL" => a * b,
        "DIV" => {
            if b == 0.0 {
                return Err(NodeError::value("Cannot divide by zero"));
            }
            a / b
        }
        "EXP" => {
            if a == 0.0 && b < 0.0 {
                return Err(NodeError::value("Cannot raise zero to a negative power"));
            }
            if a < 0.0 && b.fract() != 0.0 {
                // Python's float power gives a complex number here.
                return Err(NodeError::value(
                    "Root operation resulted in a complex number",
                ));
            }
            let p = a.powf(b);
            if p.is_infinite() {
                return Err(NodeError::new(
                    "OverflowError",
                    "(34, 'Numerical result out of range')",
                ));
            }
            p
        }
        // numpy gives NaN (serialised as null) for a negative input.
        "SQRT" => a.sqrt(),
        "ABS" => a.abs(),
        // Python's min/max keep the first argument on ties.
        "MIN" => {
            if b < a {
                b
            } else {
                a
            }
        }
        _ => {
            if b > a {
                b
            } else {
                a
            }
        }
    };
    Ok(value_output(json!(value)))
}

fn float_to_int(i: &Inputs) -> Result<Map<String, Value>, NodeError> {
    let (value, multiple) = (i.float("value")?, i.int("multiple")?);
    let q = value / multiple as f64;
    let result = match i.str("method")? {
        // round() then integer multiplication, as in Python.
        "Nearest" => float_to_i64(q.round_ties_even()).and_then(|n| n.checked_mul(multiple)),
        "Truncate" => float_to_i64(q.trunc()).and_then(|n| n.checked_mul(multiple)),
        // numpy floor/ceil give floats; the product is taken in floating point.
        "Floor" => float_to_i64(q.floor() * multiple as f64),
        _ => float_to_i64(q.ceil() * multiple as f64),
    };
    int_output(result)
}

pub fn specs() -> Vec<NodeSpec> {
    let int = || value_field(Ty::Int);
    let float = || value_field(Ty::Float);
    let mut rand_int = tagged(
        node(
            "rand_int",
            "Random Integer",
            "1.0.1",
            "math",
            vec![
                Input::new("low", Ty::Int)
                    .default(json!(0))
                    .desc("The inclusive low value"),
                Input::new("high", Ty::Int)
                    .default(json!(i32::MAX))
                    .desc("The exclusive high value"),
            ],
            "integer_output",
            int(),
            |i, _| {
                let (low, high) = (i.int("low")?, i.int("high")?);
                if low >= high {
                    return Err(bounds_error(low));
                }
                Ok(value_output(json!(rand::thread_rng().gen_range(low..high))))
            },
        ),
        &["math", "random"],
        "Outputs one random integer",
    );
    rand_int.use_cache = false;
    let mut rand_float = tagged(
        node(
            "rand_float",
            "Random Float",
            "1.0.1",
            "math",
            vec![
                Input::new("low", Ty::Float)
                    .default(json!(0.0))
                    .desc("The inclusive low value"),
                Input::new("high", Ty::Float)
                    .default(json!(1.0))
                    .desc("The exclusive high value"),
                Input::new("decimals", Ty::Int)
                    .default(json!(2))
                    .desc("The number of decimal places to round to"),
            ],
            "float_output",
            float(),
            |i, _| {
                let (low, high) = (i.float("low")?, i.float("high")?);
                // numpy's uniform: low + (high - low) * u, which also works when low > high.
                let u: f64 = rand::thread_rng().gen();
                let value = low + (high - low) * u;
                Ok(value_output(json!(np_round(value, i.int("decimals")?))))
            },
        ),
        &["math", "float", "random"],
        "Outputs one random float",
    );
    rand_float.use_cache = false;
    vec![
        tagged(
            node(
                "add",
                "Add Integers",
                "1.0.1",
                "math",
                ab(json!(0), Ty::Int),
                "integer_output",
                int(),
                |i, _| int_output(i.int("a")?.checked_add(i.int("b")?)),
            ),
            &["math", "add"],
            "Adds two numbers",
        ),
        tagged(
            node(
                "sub",
                "Subtract Integers",
                "1.0.1",
                "math",
                ab(json!(0), Ty::Int),
                "integer_output",
                int(),
                |i, _| int_output(i.int("a")?.checked_sub(i.int("b")?)),
            ),
            &["math", "subtract"],
            "Subtracts two numbers",
        ),
        tagged(
            node(
                "mul",
                "Multiply Integers",
                "1.0.1",
                "math",
                ab(json!(0), Ty::Int),
                "integer_output",
                int(),
                |i, _| int_output(i.int("a")?.checked_mul(i.int("b")?)),
            ),
            &["math", "multiply"],
            "Multiplies two numbers",
        ),
        tagged(
            node(
                "div",
                "Divide Integers",
                "1.0.1",
                "math",
                ab(json!(0), Ty::Int),
                "integer_output",
                int(),
                |i, _| {
                    let (a, b) = (i.int("a")?, i.int("b")?);
                    if b == 0 {
                        return Err(NodeError::new("ZeroDivisionError", "division by zero"));
                    }
                    int_output(int_div(a, b))
                },
            ),
            &["math", "divide"],
            "Divides two numbers",
        ),
        rand_int,
        rand_float,
        tagged(
            node(
                "float_to_int",
                "Float To Integer",
                "1.0.1",
                "math",
                vec![
                    Input::new("value", Ty::Float)
                        .default(json!(0))
                        .desc("The value to round"),
                    Input::new("multiple", Ty::Int)
                        .default(json!(1))
                        .ge(json!(1))
                        .desc("The multiple to round to"),
                    Input::new("method", Ty::Enum(ROUNDING_METHODS))
                        .default(json!("Nearest"))
                        .desc("The method to use for rounding"),
                ],
                "integer_output",
                int(),
                |i, _| float_to_int(i),
            ),
            &["math", "round", "integer", "float", "convert"],
            "Rounds a float to (a multiple of) an integer",
        ),
        tagged(
            node(
                "round_float",
                "Round Float",
                "1.0.1",
                "math",
                vec![
                    Input::new("value", Ty::Float)
                        .default(json!(0))
                        .desc("The float value"),
                    Input::new("decimals", Ty::Int)
                        .default(json!(0))
                        .desc("The number of decimal places"),
                ],
                "float_output",
                float(),
                |i, _| {
                    let value = py_round(i.float("value")?, i.int("decimals")?);
                    Ok(value_output(json!(value)))
                },
            ),
            &["math", "round"],
            "Rounds a float to a number of decimal places",
        ),
        tagged(
            node(
                "integer_math",
                "Integer Math",
                "1.0.1",
                "math",
                [
                    vec![Input::new("operation", Ty::Enum(INTEGER_OPERATIONS))
                        .default(json!("ADD"))
                        .desc("The operation to perform")],
                    ab(json!(1), Ty::Int),
                ]
                .concat(),
                "integer_output",
                int(),
                |i, _| integer_math(i),
            ),
            &[
                "math",
                "integer",
                "add",
                "subtract",
                "multiply",
                "divide",
                "modulus",
                "power",
                "absolute value",
                "min",
                "max",
            ],
            "Performs integer math",
        ),
        tagged(
            node(
                "float_math",
                "Float Math",
                "1.0.1",
                "math",
                [
                    vec![Input::new("operation", Ty::Enum(FLOAT_OPERATIONS))
                        .default(json!("ADD"))
                        .desc("The operation to perform")],
                    ab(json!(1), Ty::Float),
                ]
                .concat(),
                "float_output",
                float(),
                |i, _| float_math(i),
            ),
            &[
                "math",
                "float",
                "add",
                "subtract",
                "multiply",
                "divide",
                "power",
                "root",
                "absolute value",
                "min",
                "max",
            ],
            "Performs floating point math",
        ),
        tagged(
            node(
                "if",
                "If",
                "1.0.0",
                "math",
                vec![
                    Input::new("condition", Ty::Bool)
                        .default(json!(false))
                        .desc("The condition used to select an input"),
                    Input::new("true_input", Ty::Any)
                        .optional()
                        .desc("Selected when the condition is true"),
                    Input::new("false_input", Ty::Any)
                        .optional()
                        .desc("Selected when the condition is false"),
                ],
                "if_output",
                vec![("value", Ty::Any)],
                |i, _| {
                    let pick = if i.bool("condition")? {
                        "true_input"
                    } else {
                        "false_input"
                    };
                    Ok(value_output(i.get(pick).clone()))
                },
            ),
            &["logic", "conditional"],
            "Selects one of two optional inputs by a boolean condition",
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_rounding() {
        assert_eq!(py_round(2.675, 2), 2.67);
        assert_eq!(py_round(0.125, 2), 0.12);
        assert_eq!(py_round(0.375, 2), 0.38);
        assert_eq!(py_round(2.5, 0), 2.0);
        assert_eq!(py_round(3.5, 0), 4.0);
        assert_eq!(py_round(1234.5, -2), 1200.0);
        assert_eq!(py_round(1250.0, -2), 1200.0);
        assert_eq!(py_round(1350.0, -2), 1400.0);
        assert_eq!(py_round(9.99, 1), 10.0);
        assert_eq!(py_round(-0.5, 0), -0.0);
        assert_eq!(py_round(0.4, -1), 0.0);
        assert_eq!(py_round(1.23456, 3), 1.235);
    }

    #[test]
    fn python_division_and_modulus() {
        assert_eq!(int_div(7, -2), Some(-3));
        assert_eq!(int_div(-7, 2), Some(-3));
        // 3 * 2^52 + 2 over 3 rounds up to 2^52 + 1 as a double before truncation.
        assert_eq!(int_div(3 * (1 << 52) + 2, 3), Some((1 << 52) + 1));
        assert_eq!(int_div((1 << 62) + 1, 1), Some(1 << 62));
        assert_eq!(int_div(i64::MIN, -1), None);
        assert_eq!(py_mod(-7, 3), 2);
        assert_eq!(py_mod(7, -3), -2);
        assert_eq!(py_mod(i64::MIN, -1), 0);
        assert_eq!(int_pow(-1, 7), Some(-1));
        assert_eq!(int_pow(2, 64), None);
    }
}
